from ferflow.cli import entry

raise SystemExit(entry())
