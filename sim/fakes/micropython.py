# CPython stand-in for MicroPython's `micropython` module (device code imports const from it).


def const(x):
    return x


def native(f):
    return f


def viper(f):
    return f


def mem_info(*args):
    pass


def opt_level(*args):
    return 0
