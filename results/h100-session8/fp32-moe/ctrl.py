"""Print a cuobjdump -sass listing with the Volta+ control bits decoded per instruction
(stall cycles, yield, write / read scoreboard set, scoreboards waited on): `python ctrl.py f.sass [from] [to]`."""
import re, sys

text = open(sys.argv[1]).read()
lo_addr = int(sys.argv[2], 16) if len(sys.argv) > 2 else 0
hi_addr = int(sys.argv[3], 16) if len(sys.argv) > 3 else 1 << 40
pat = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\* (0x[0-9a-f]{16}) \*/\s*\n\s*/\* (0x[0-9a-f]{16}) \*/")
for m in pat.finditer(text):
    addr = int(m.group(1), 16)
    if not lo_addr <= addr <= hi_addr:
        continue
    hi = int(m.group(4), 16)
    stall, yld, wb, rb, wait = (hi >> 41) & 0xF, (hi >> 45) & 1, (hi >> 46) & 7, (hi >> 49) & 7, (hi >> 52) & 0x3F
    w = "".join(str(i) for i in range(6) if wait >> i & 1)
    print(f"{addr:06x} S{stall:2d} {'Y' if yld else ' '} W{wb if wb != 7 else '-'} R{rb if rb != 7 else '-'} wait[{w:6s}] {' '.join(m.group(2).split())[:70]}")
