from spoold.cli.entry import main

raise SystemExit(main())
