"""A local emulator of the Glance Activity Service, for tests, demos and benchmarks.

It is the other side of the wire, written from the API page (``glance-activity-api.md``) and
the seed documents: it imports nothing from the client, the events or the daemon, so that a
misreading of the API cannot hide by being made twice.

Modules, one concept each:

* ``clock``: the controllable clock every time-dependent answer reads;
* ``dates``: dates as the service reads (ISO, offsets, US Eastern) and writes them;
* ``sessions``: one session over its life and the record it shows at an instant;
* ``store``: sessions per partner, indexed by start time, id and end time;
* ``traffic``: seeded synthetic sessions, in bulk or as a live stream;
* ``dataset``: fixed data sets in the API's own response format;
* ``operations``: the four web methods, without HTTP;
* ``faults``: what goes wrong on which call (transport faults, record mutations);
* ``wire``: the bytes on the wire, normal and broken;
* ``endpoint``: one ASMX call from request to response;
* ``admin``: the admin API (``/admin/...``);
* ``stats``: per-operation call counters;
* ``gc_pause``: building large numbers of objects without the cyclic collector in the way;
* ``state``: everything one emulator holds;
* ``app``: the aiohttp application (and the emulator-clock ``Date`` header);
* ``cli``: ``glance-poller emulator`` / ``python -m poller.emulator``.
"""
