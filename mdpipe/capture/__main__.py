from mdpipe.capture.cli import main

raise SystemExit(main())
