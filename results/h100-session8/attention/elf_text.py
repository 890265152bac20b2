"""Print the sha256 of each .text.<kernel> section of a cubin (ELF64), to compare SASS across builds."""
import hashlib, struct, sys
d = open(sys.argv[1], "rb").read()
shoff, = struct.unpack_from("<Q", d, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
secs = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
stroff = secs[shstrndx][4]
for name, typ, flags, addr, off, size, *_ in secs:
    n = d[stroff + name: d.index(b"\0", stroff + name)].decode()
    if n.startswith(".text."):
        print(n, size, hashlib.sha256(d[off:off + size]).hexdigest()[:16])
