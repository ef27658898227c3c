from ptqlib.cli import main

raise SystemExit(main())
