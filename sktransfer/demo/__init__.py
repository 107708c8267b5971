"""``sktransfer demo``: the offline demonstration (:mod:`.run`), its data (:mod:`.data`:
photo patches, Rotten Tomatoes, digits) and its report (:mod:`.report`). It runs the command
line as a user would, in a process of its own; the library never imports this package."""
