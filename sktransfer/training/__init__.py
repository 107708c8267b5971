"""Training: the skorch loop, its callbacks, schedules, head solvers and regularisers."""
