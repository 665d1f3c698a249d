"""Tools around the monitoring configs in this directory.

- ``configs``: copies of prometheus.yml, the rules and alertmanager.yml rewritten
  for a run on loopback (addresses, intervals, ``for:`` durations only);
- ``stack``: the whole stack (simulator, gateway, Alertmanager, Prometheus and a
  webhook receiver) as separate local processes, started and always stopped;
- ``drill``: the alert drill (``scripts/alert-drill``), built on the two above.
"""
