from spoold.cli import main

raise SystemExit(main())
