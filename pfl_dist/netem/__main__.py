from pfl_dist.netem.cli import main
from pfl_dist.runtime import exit_process

exit_process(main())
