from pneumolab.cli import main

raise SystemExit(main())
