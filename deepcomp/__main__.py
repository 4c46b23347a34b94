from deepcomp.cli import main

raise SystemExit(main())
