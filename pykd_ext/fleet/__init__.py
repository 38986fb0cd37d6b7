"""``leakhunt triage``: analyze many dumps in isolation, bucket them, and write the results.

Pieces, in the order a run uses them:

- ``inputs``: what to analyze (files, folders, ``--from``), each with its size, time and file type;
- ``analysis``: the one adapter from a path to a report (``analyze_file``) and the isolated task
  around it (``run_task``), shared by both engines;
- ``buckets``: the bucket key of a result (rules in the README, "Fleet triage");
- ``local`` and ``dask_engine``: the engines (forked worker processes; a Dask cluster);
- ``output``: results.jsonl, reports/, buckets.csv, summary.json; ``html``: report.html;
- ``command``: the ``triage`` subcommand.

Nothing here imports Dask unless the Dask engine is asked for.
"""
