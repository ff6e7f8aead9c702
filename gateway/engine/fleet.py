"""Fleet watermarks without a walk over the fleet: the minimum watermark of a site's active devices from a heap of
them (``DeviceTracker.fleet_wm`` gives the same by visiting every device; see :class:`FleetHeap`).

:class:`SiteFleets` keeps a heap per site for an owner with one bound a device: the window engine one for each site
window (each window has its own bounds), the pattern matcher one for its site keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .operators import NO_WM, WmCell
from .watermark import DeviceTracker

__all__ = ["FleetHeap", "Member", "MemberFleets", "SiteFleets", "entry_active", "entry_wm"]


def entry_wm(e: list[Any], bound: int) -> int:
    """``DeviceTracker.device_wm`` of the device whose tracker entry is ``e`` (``NO_WM`` for None: an int that
    compiled code need not box)."""
    top: int | None = e[1]
    fl: int | None = e[2]
    wm = NO_WM if top is None else top - bound
    if fl is not None and fl + 1 > wm:
        wm = fl + 1
    return wm


def entry_active(e: list[Any], now_ms: int, idle_timeout: int, idle_factor: float, idle_grace: int) -> bool:
    """``DeviceTracker.is_active`` of the device whose tracker entry is ``e`` (the spec's idle settings given)."""
    last: int | None = e[3]
    if e[5] or last is None:
        return False
    sleep: int | None = e[4]
    timeout = idle_timeout if sleep is None else int(idle_factor * sleep + idle_grace)
    return now_ms - last <= timeout


class Member:
    """A device in a site's fleet heap (:class:`FleetHeap`) for one window."""

    __slots__ = ("bound", "entry", "queued", "wm")

    def __init__(self, entry: list[Any], bound: int) -> None:
        self.entry = entry  # the device's tracker entry (the tracker's own list)
        self.bound = bound  # its bound in the window
        self.queued = False  # it is in the heap ...
        self.wm = 0  # ... at this watermark (recorded when it went in or was last refreshed)


class FleetHeap:
    """A site's devices by watermark, for one site window: a binary heap of members (:class:`Member`) by their
    recorded watermark, at most one entry a device.

    A device's recorded watermark is never above its watermark now (a device's watermark never goes back), so when
    the top's device is active and its watermark is still the recorded one, that is the fleet watermark: the
    minimum over the active devices. A top whose device moved on since is refreshed (its watermark now, sifted
    down); one whose device turned idle is dropped, and put in again when the device is heard from. So a message
    costs one sift at most, comparing native ints, instead of a walk over the site's devices. ``now`` is the latest
    time idleness was judged at: if time goes back the heap is made again from every device of the site (an idle
    device may be active again).

    So a device with a watermark is missing from a heap only if it was idle when the heap last judged it: a heap is
    made with every device of its site; a device joins a site only with its first message or status (or a move, which
    drops the site's heaps); a device dropped as idle at ``now`` is still idle at any later time until it is heard from,
    and an earlier time makes the heap again. Its owner puts a device back into its heaps after each message or
    status of it, whatever the time: a message at an earlier gateway time than a heap last judged (the clock
    stepped back) may find the device active, and the heap judged at a later time again must count it.
    """

    __slots__ = ("cell", "heap", "members", "now")

    def __init__(self, now: int) -> None:
        self.heap: list[Member] = []
        self.members: dict[str, Member] = {}
        self.now = now
        self.cell: WmCell | None = None  # a window's: the site's watermark cell in its operator, once it has one

    def member(self, device: str, entry: list[Any], bound: int) -> Member:
        m = self.members.get(device)
        if m is None:
            m = self.members[device] = Member(entry, bound)
        return m

    def push(self, m: Member, wm: int) -> None:
        """Put ``m`` (not in the heap) in it at ``wm``."""
        m.queued = True
        m.wm = wm
        heap = self.heap
        i = len(heap)
        heap.append(m)
        while i > 0:
            p = (i - 1) >> 1
            parent = heap[p]
            if parent.wm <= wm:
                break
            heap[i] = parent
            i = p
        heap[i] = m

    def sift_down(self, m: Member) -> None:
        """Place ``m`` at the top and sift it down to its place (its ``wm`` set)."""
        heap = self.heap
        n = len(heap)
        wm = m.wm
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            child = heap[c]
            if c + 1 < n:
                right = heap[c + 1]
                if right.wm < child.wm:
                    c += 1
                    child = right
            if wm <= child.wm:
                break
            heap[i] = child
            i = c
        heap[i] = m

    def pop_top(self) -> None:
        """Drop the top member (its device turned idle)."""
        heap = self.heap
        heap[0].queued = False
        last = heap.pop()
        if heap:
            self.sift_down(last)

    def top(self, now_ms: int, idle_timeout: int, idle_factor: float, idle_grace: int) -> int:
        """The minimum watermark of the active members at ``now_ms`` (``NO_WM`` if none is active): the top, after
        refreshing the tops that moved on and dropping those that turned idle."""
        heap = self.heap
        while heap:
            m = heap[0]
            e = m.entry
            wm = entry_wm(e, m.bound)
            if wm == NO_WM or not entry_active(e, now_ms, idle_timeout, idle_factor, idle_grace):
                self.pop_top()  # idle (or, not from a tracker that only moves forward, without a watermark)
            elif wm != m.wm:
                m.wm = wm
                self.sift_down(m)
            else:
                return wm
        return NO_WM


class _Fleets:
    """What :class:`SiteFleets` and :class:`MemberFleets` both keep: the tracker, each device's bound, the idle
    settings (read once, not from the spec at each message) and a heap by name."""

    def __init__(self, tracker: DeviceTracker, bound_of: Callable[[str], int]) -> None:
        self.tracker = tracker
        self.bound_of = bound_of
        spec = tracker.spec
        self.idle_timeout = spec.idle_timeout_ms
        self.idle_factor = float(spec.idle_factor)
        self.idle_grace = spec.idle_grace_ms
        self.heaps: dict[str, FleetHeap] = {}
        self.walk = False  # walk every device instead, as the tracker does (tests compare the two)

    def top(self, f: FleetHeap, now_ms: int) -> int:
        """:meth:`FleetHeap.top` of ``f`` with the idle settings."""
        return f.top(now_ms, self.idle_timeout, self.idle_factor, self.idle_grace)


class SiteFleets(_Fleets):
    """The fleet watermark of each site (:meth:`DeviceTracker.fleet_wm` with one bound a device), from a heap per
    site. Its owner calls :meth:`heard` after the tracker took each message or status of a device, :meth:`moved`
    after a move, and :meth:`clear` after a restore of the tracker."""

    def __init__(self, tracker: DeviceTracker, bound_of: Callable[[str], int]) -> None:
        super().__init__(tracker, bound_of)
        self.sites_of: dict[str, list[str]] = {}  # device -> the sites whose heap may hold it (tracker.sites)

    def heard(self, device: str) -> None:
        """The tracker took a message or status of ``device``: into the heap of each of its sites where it is not
        (nothing to do before a heap is made: each is made with every device of its site)."""
        if not self.heaps:
            return
        e = self.tracker.state.get(device)
        if e is None:
            return
        sites = self.sites_of.get(device)
        if sites is None:
            sites = self.sites_of[device] = [str(e[0])]
        for site in sites:
            f = self.heaps.get(site)
            if f is None:
                continue
            m = f.members.get(device)
            if m is None:
                m = f.member(device, e, self.bound_of(device))
            if not m.queued:
                wm = entry_wm(e, m.bound)
                if wm != NO_WM:
                    f.push(m, wm)

    def moved(self, device: str, site: str) -> None:
        """The tracker moved ``device`` to ``site``: it counts for that site's heap too (made again when needed)."""
        if device in self.tracker.sites.get(site, ()):
            sites = self.sites_of.get(device)
            if sites is None:  # not heard from yet: every site of the tracker's that holds it
                sites = self.sites_of[device] = [s for s, ds in self.tracker.sites.items() if device in ds]
            if site not in sites:
                sites.append(site)
            self.heaps.pop(site, None)

    def clear(self) -> None:
        """The tracker was restored: every heap is made again when needed."""
        self.heaps = {}
        self.sites_of = {}

    def heap(self, site: str, now_ms: int) -> FleetHeap:
        """The site's heap, judged at ``now_ms``: made (again) from every device of the site if it has none or
        time went back."""
        f = self.heaps.get(site)
        if f is None or now_ms < f.now:
            f = self.heaps[site] = FleetHeap(now_ms)
            tracker = self.tracker
            state = tracker.state
            for d in tracker.sites.get(site, ()):
                sites = self.sites_of.setdefault(d, [])
                if site not in sites:
                    sites.append(site)
                e = state[d]
                m = f.member(d, e, self.bound_of(d))
                wm = entry_wm(e, m.bound)
                if wm != NO_WM:
                    f.push(m, wm)
        f.now = now_ms
        return f

    def fleet_wm_at(self, site: str, f: FleetHeap, now_ms: int) -> int:
        """``DeviceTracker.fleet_wm(site, bound_of, now_ms)`` from the site's heap ``f`` (``NO_WM`` for None)."""
        wm = self.top(f, now_ms)
        if wm != NO_WM:
            return wm
        walk = self.tracker.fleet_wm(site, self.bound_of, now_ms)  # no device active: the largest watermark (a walk)
        return NO_WM if walk is None else walk

    def fleet_wm(self, site: str, now_ms: int) -> int | None:
        """``DeviceTracker.fleet_wm(site, bound_of, now_ms)``."""
        if self.walk:
            return self.tracker.fleet_wm(site, self.bound_of, now_ms)
        wm = self.fleet_wm_at(site, self.heap(site, now_ms), now_ms)
        return None if wm == NO_WM else wm


class MemberFleets(_Fleets):
    """The fleet rule over named lists of members that only grow (a pattern group's members, in the order first
    seen): ``DeviceTracker.members_wm(members, bound_of, now_ms, hold_unread=...)`` from a heap per name. The owner
    calls :meth:`heard` after the tracker took a message or status of a device, and :meth:`clear` after a restore
    of the tracker; members appended to a list join its heap at the next
    :meth:`fleet_wm`. With ``hold_unread``, members that have no watermark yet are kept aside (usually few: boards
    that said they are online and have sent no reading) and an active one among them holds the result (None)."""

    def __init__(self, tracker: DeviceTracker, bound_of: Callable[[str], int], hold_unread: bool) -> None:
        super().__init__(tracker, bound_of)
        self.hold_unread = hold_unread
        self.taken: dict[str, int] = {}  # name -> how many of its members its heap has taken
        self.unread: dict[str, dict[str, Member]] = {}  # name -> its members without a watermark yet
        self.names_of: dict[str, list[str]] = {}  # device -> the lists whose heap took it (a member stays one)
        self.absent: dict[str, list[str]] = {}  # name -> its members the tracker did not know when listed (rare)

    def _take(self, name: str, f: FleetHeap, m: Member, device: str) -> None:
        """Into the heap if ``m`` is not there and has a watermark; aside if it has none."""
        if m.queued:
            return
        wm = entry_wm(m.entry, m.bound)
        unread = self.unread[name]
        if wm != NO_WM:
            if device in unread:
                del unread[device]
            f.push(m, wm)
        elif self.hold_unread:
            unread[device] = m

    def _join(self, name: str, f: FleetHeap, device: str, e: list[Any]) -> None:
        names = self.names_of.setdefault(device, [])
        if name not in names:
            names.append(name)
        self._take(name, f, f.member(device, e, self.bound_of(device)), device)

    def heard(self, device: str) -> None:
        """The tracker took a message or status of ``device``: into each heap that took it, where it is not (one
        that has not taken it yet takes it at its next :meth:`fleet_wm`)."""
        for name in self.names_of.get(device, ()):
            f = self.heaps.get(name)
            if f is not None:
                m = f.members.get(device)
                if m is not None:
                    self._take(name, f, m, device)

    def clear(self) -> None:
        """The tracker was restored: every heap is made again when needed."""
        self.heaps = {}
        self.taken = {}
        self.unread = {}
        self.names_of = {}
        self.absent = {}

    def fleet_wm(self, name: str, members: list[str], now_ms: int) -> int | None:
        """``DeviceTracker.members_wm(members, bound_of, now_ms, hold_unread=...)`` for the list ``name``."""
        tracker = self.tracker
        if self.walk:
            return tracker.members_wm(members, self.bound_of, now_ms, hold_unread=self.hold_unread)
        f = self.heaps.get(name)
        if f is None or now_ms < f.now:
            f = self.heaps[name] = FleetHeap(now_ms)
            self.taken[name] = 0
            self.unread[name] = {}
            self.absent[name] = []
        f.now = now_ms
        state = tracker.state
        absent = self.absent[name]
        if absent:  # members the tracker did not know (a device moved before it was heard from): taken once known
            todo = [d for d in absent if d in state]
            if todo:
                absent[:] = [d for d in absent if d not in state]
                for d in todo:
                    self._join(name, f, d, state[d])
        n = self.taken[name]
        while n < len(members):
            d = members[n]
            e = state.get(d)
            if e is None:
                absent.append(d)  # not active, as for the walk, until the tracker knows it
            else:
                self._join(name, f, d, e)
            n += 1
        self.taken[name] = n
        timeout, factor, grace = self.idle_timeout, self.idle_factor, self.idle_grace
        unread = self.unread[name]
        if unread:
            for d, m in list(unread.items()):
                if entry_wm(m.entry, m.bound) != NO_WM:
                    self._take(name, f, m, d)  # its first reading since: into the heap
                elif entry_active(m.entry, now_ms, timeout, factor, grace):
                    return None
        wm = self.top(f, now_ms)
        if wm == NO_WM:  # no member active with a watermark: the walk's answer (the largest, or None)
            return tracker.members_wm(members, self.bound_of, now_ms, hold_unread=self.hold_unread)
        return wm
