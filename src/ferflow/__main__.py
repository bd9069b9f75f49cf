from ferflow.cli import main

raise SystemExit(main())
