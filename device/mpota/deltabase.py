# Which patch of a release to apply: the one whose base is the image this board runs. Loaded
# for that only (the updater's delta path, with the outbox out of RAM) and unloaded before the
# transfer, where mpota.delta applies it.


# The patch of offer `o` to apply (the updater's delta path), or None: the first of o.deltas
# whose base is the image in the running slot `run` (one pass over the slot whatever the
# number of patches: a SHA-256 per distinct base size, at most trust's limit on patches),
# unless a plain download of o recorded further than the patch is long (its rest is fewer
# bytes). Sets o.how (the reports' detail) to {"delta": "fallback: base" or "fallback:
# resume", "full_bytes"}; a patch taken drops the resume record it is about to overwrite.
def patch(u, o, run):
    import mpota.slot as slot

    o.how = {"delta": "fallback: base", "full_bytes": o.transfer_size}
    room = run.info()[3]
    sizes = []
    for c in o.deltas:
        n = c["base_size"]
        if n <= room and n not in sizes:
            sizes.append(n)
    hs = slot.hashes(run, u._block(), sizes, u._feed)
    for d in o.deltas:
        n = d["base_size"]
        if n in sizes and slot.hexdigest(hs[sizes.index(n)]) == d["base_hash"][7:]:
            done = u._resumes(o)
            if done and o.size - done <= d["size"]:
                o.how["delta"] = "fallback: resume"
                return None
            if done:
                u.state["dl"] = None
                u.state.save()
            return d
    return None
