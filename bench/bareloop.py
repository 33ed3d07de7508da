"""The bare loop the heap and speed benches compare the update with (MicroPython source).

What the least an OTA update can do looks like on a board: one raw socket, an HTTP/1.0 GET, the
body read into one 4 KiB buffer and written block by block with ``Partition.writeblocks`` into
the next OTA slot. No hashing, no signatures, no reports, no resume. ``SOURCE`` defines
``bare_loop(url)`` (returns the bytes written); the benches paste it into their board scripts,
so it runs on the simulated board exactly like the update it is compared with.
"""

SOURCE = r'''
def bare_loop(url):
    import socket
    import esp32
    hostport, path = url.split("/", 3)[2:]
    host, port = hostport.split(":")
    part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    buf = bytearray(4096)
    mv = memoryview(buf)
    s = socket.socket()
    try:
        s.connect(socket.getaddrinfo(host, int(port))[0][-1])
        s.write(b"GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, host))
        if s.readline().split()[1] != b"200":
            raise OSError("bare loop: HTTP status")
        size = -1
        while True:
            line = s.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                size = int(line[15:])
        blk = 0
        total = 0
        while True:
            got = 0
            while got < 4096:
                n = s.readinto(mv[got:])
                if not n:
                    break
                got += n
            if not got:
                break
            total += got
            if got < 4096:
                for i in range(got, 4096):
                    buf[i] = 0xFF
            part.writeblocks(blk, buf)
            blk += 1
            if got < 4096:
                break
    finally:
        s.close()
    if total != size:
        raise OSError("bare loop: %d of %d bytes" % (total, size))
    return total
'''
