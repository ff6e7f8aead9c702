# Runs at every reset and every wake from deep sleep, before main.py. Keep it short.
import gc

try:
    import esp
    esp.osdebug(None)  # no ROM/IDF debug chatter on the UART
except ImportError:
    pass
gc.collect()
