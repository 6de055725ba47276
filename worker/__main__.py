"""`python -m worker --worker-id worker-1`"""

from worker.worker_node import main

main()
