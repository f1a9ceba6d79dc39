from hfray.cli import main

raise SystemExit(main())
