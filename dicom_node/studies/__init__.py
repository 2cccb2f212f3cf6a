"""From received instances to jobs: when a study is complete (tracker), which instances may be edited
(eligibility), what each asks for (requests), and the jobs made from them (intake), all recorded
(records)."""
