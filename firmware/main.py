# One wake: sample, buffer, maybe publish, deep sleep. See app.py.
# If even the import fails (a damaged file, no memory), sleep a minute rather than sit at the REPL
# with the radio and CPU on until the battery is flat.
try:
    try:
        import otaboot  # which build runs: one that came over the air (on trial, or rolled back), or this one
        otaboot.select()
    except ImportError:
        pass
    import app
    app.main()
except KeyboardInterrupt:  # a host (mpremote) interrupted: stay awake for it
    raise
except Exception as e:
    import sys
    print('EK fatal', repr(e))
    sys.print_exception(e)
    import machine
    machine.deepsleep(60000)
