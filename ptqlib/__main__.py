from ptqlib.app.cli import main

raise SystemExit(main())
