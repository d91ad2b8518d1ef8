"""The durable local spool in front of an MLflow server, and the thread that empties it.

Every batch bound for the server is first committed to a SQLite file (WAL,
``synchronous=FULL``) and deleted only when the server has acknowledged it, so the
writer, and the training loop behind it, never wait on the network, and a process that
dies leaves its unsent data on disk. Replay is safe: a batch whose acknowledgement was
lost is sent again, and MLflow stores an identical metric row once and accepts an
identical param again.

The modules, in the order data goes through them:

- :mod:`.rows`: a batch as stored entries (kind, points, body; metric rows packed in
  columns) and the checksum each carries.
- :mod:`.spool_file`: the spool file, its lock and every query on it.
- :mod:`.sender`: ships a spool to its server, oldest batch first, merging consecutive
  metric batches; creates the runs started offline.
- :mod:`.remote`: :class:`~.remote.SpoolStore`, the Store for ``http(s)://`` URIs: writes
  go to the spool, its sender thread sends them, reads go to the server.
- :mod:`.sync_support`: what ``autolog sync`` does with the spool files no live process
  holds.
"""
