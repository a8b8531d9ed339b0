"""The property checks of `deploy/kubernetes/check.py`, one module per part of the render."""

from .ca import (ca_container, check_ca_args, check_ca_availability, check_ca_rbac,
                 check_ca_secrets, check_ca_service)
from .objects import APP_CONFIGMAP
from .pods import check_containers
from .sidecar import check_app_traffic, check_sidecar_mounts, check_sidecar_runs, sidecar_files

# Every check, in the order their problems are reported.
ALL = [check_containers, check_ca_availability, check_ca_service, check_ca_rbac,
       check_ca_secrets, check_ca_args, check_sidecar_runs, check_sidecar_mounts,
       check_app_traffic]

__all__ = ["ALL", "APP_CONFIGMAP", "ca_container", "sidecar_files"]
