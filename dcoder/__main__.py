from dcoder.cli import main

raise SystemExit(main())
