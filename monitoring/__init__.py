"""Tools around the monitoring configs in this directory.

- ``configs``: copies of prometheus.yml, the rules and alertmanager.yml rewritten
  for a run on loopback (addresses, intervals, ``for:`` durations only), and the
  one loader of the rule files;
- ``processes``: child processes that are always stopped, free ports, bounded
  polling (also used by the benchmark and the tests);
- ``stack``: the whole stack (simulator, gateway, Alertmanager, Prometheus and a
  webhook receiver) as separate local processes, started and always stopped;
- ``clients``: HTTP clients for the simulator's control API, the gateway and Prometheus;
- ``webhook``: the in-process webhook receiver Alertmanager notifies;
- ``drill``: the alert drill (``scripts/alert-drill``), built on the above.
"""
