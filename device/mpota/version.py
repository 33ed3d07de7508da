# Semantic version compare for the device: MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], an
# optional leading "v" (ESP-IDF app_desc versions often read "v1.24.0"). Missing minor or
# patch count as 0. Build metadata is ignored; a pre-release sorts before its release;
# pre-release fields compare numerically when both are numbers, numbers before words
# (semver.org rule 11). Anything else is not a version: parse() raises ValueError.


def parse(text):
    if not isinstance(text, str) or not text:
        raise ValueError("version")
    if text[0] in "vV":
        text = text[1:]
    i = text.find("+")
    if i >= 0:
        text = text[:i]
    pre = ()
    i = text.find("-")
    if i >= 0:
        pre = tuple(_field(f) for f in text[i + 1 :].split("."))
        text = text[:i]
    parts = text.split(".")
    if not 1 <= len(parts) <= 3:
        raise ValueError("version")
    nums = []
    for p in parts:
        if not p or not p.isdigit():
            raise ValueError("version")
        nums.append(int(p))
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2], pre)


def _field(f):
    if not f:
        raise ValueError("version")
    return int(f) if f.isdigit() else f


# -1, 0 or 1 as a < b, a == b, a > b (strings or parsed tuples).
def compare(a, b):
    if isinstance(a, str):
        a = parse(a)
    if isinstance(b, str):
        b = parse(b)
    for i in range(3):
        if a[i] != b[i]:
            return -1 if a[i] < b[i] else 1
    pa, pb = a[3], b[3]
    if pa == pb:
        return 0
    if not pa:
        return 1
    if not pb:
        return -1
    for i in range(min(len(pa), len(pb))):
        x, y = pa[i], pb[i]
        if x == y:
            continue
        xi, yi = isinstance(x, int), isinstance(y, int)
        if xi != yi:
            return -1 if xi else 1
        return -1 if x < y else 1
    return -1 if len(pa) < len(pb) else 1
