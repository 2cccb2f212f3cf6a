"""Jobs: the durable record of one edit of one source instance, and how it runs.

    states   the state machine (the only rules for a job's state)
    store    reads and writes of jobs; `transition` is the only state writer
    queue    put a job on the Celery queue (by task name: no import of the tasks)
    leases   which worker runs which job; recovering jobs whose worker is gone
    pipeline one attempt of one job: edit -> encode -> send
    tasks    the Celery task around one attempt
    sweeper  the periodic recovery sweep of every worker
    worker   running Celery workers (embedded in `x2x serve`, or `x2x worker`)
    admin    operator actions (cancel, retry)
"""
