"""`python -m dts_client ...`: the `dts` command line."""

from dts_client.cli import main

raise SystemExit(main())
