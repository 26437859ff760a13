from vramplan.cli.app import main

raise SystemExit(main())
