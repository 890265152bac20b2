"""Opcode mix of each main-loop body (from a BAR.SYNC to the next backward BRA, refill branch included)
in a cuobjdump -sass listing, for loops that hold HMMAs: `python loop_mix.py kernel.sass`."""
import collections, re, sys

ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in
       re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-9T] )?([A-Z0-9_.]+)([^;]*);", open(sys.argv[1]).read())]
i = 0
while i < len(ins):
    if ins[i][1].startswith("BAR.SYNC"):
        j = i + 1
        while j < len(ins) and not (ins[j][1] == "BRA" and int(ins[j][2].split()[-1], 16) < ins[j][0]):
            j += 1
        body = collections.Counter(op.split(".")[0] for _, op, _ in ins[i:j])
        if body["HMMA"]:
            print(f"{j - i:5d} instr:", " ".join(f"{op} {n}" for op, n in body.most_common(13)))
        i = j
    i += 1
