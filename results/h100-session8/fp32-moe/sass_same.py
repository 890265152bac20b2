"""Compare the SASS of every kernel in cubin A with the same kernel in cubin B (cuobjdump -sass):
`python sass_same.py base.cubin new.cubin` prints same/DIFFERENT per kernel of A, and the kernels only in B."""
import re, subprocess, sys

CUOBJDUMP = "/tmp/nvtools/x/nvidia/cu13/bin/cuobjdump"


def kernels(cubin):
    text = subprocess.run([CUOBJDUMP, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    out = {}
    for part in re.split(r"\n\s*Function : ", text)[1:]:
        name, body = part.split("\n", 1)
        # drop the /*addr*/ columns? keep them: identical code has identical addresses
        out[name.strip()] = re.sub(r"[ \t]+", " ", body)  # column padding depends on the longest line of the file
    return out


a, b = kernels(sys.argv[1]), kernels(sys.argv[2])
bad = 0
for name in sorted(a):
    same = b.get(name) == a[name]
    bad += not same
    print(f"{'same' if same else 'MISSING' if name not in b else 'DIFFERENT'}  {name}")
print("only in new:", sorted(set(b) - set(a)))
print(f"{len(a) - bad}/{len(a)} kernels byte-identical")
