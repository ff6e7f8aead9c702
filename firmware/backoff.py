# Backoff across wakes for the radio: after a failed uplink (Wi-Fi, DNS, broker) the board keeps the radio
# off for the next 0, 1, 3, 7, ... wakes (2**(n-1) - 1 after the n-th failure in a row), at most
# backoff_max_s worth of wakes, so an outage costs about one attempt per backoff_max_s instead of one per
# wake, and data still gets out within backoff_max_s + one sleep after the network returns. Counted in
# wakes, not RTC time: it needs no clock, and a wake is what costs the charge. The state lives in RTC
# memory (state.py: fails, net_skip).


def hold(st):
    """Called once per wake: True if this wake must keep the radio off. Also ages the broker address
    uplink.py keeps in RTC memory."""
    if st.ip_age < 0xFFFF:
        st.ip_age += 1
    if st.net_skip > 0:
        st.net_skip -= 1
        return True
    return False


def cap(cfg):
    """The longest radio pause, in wakes."""
    return max(1, cfg.get('backoff_max_s', 3600) // cfg['sleep_s'])


def failed(st, cfg):
    st.fails += 1
    n = st.fails - 1
    st.net_skip = min(1 << (n if n < 16 else 16), cap(cfg)) - 1


def ok(st):
    st.fails = 0
    st.net_skip = 0
