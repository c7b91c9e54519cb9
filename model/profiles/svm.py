"""The ``svm`` profile: AMD SVM, the guest in guest mode under ``svm.DEFAULT`` (nested paging;
``--controls FILE`` replaces it), on the processor of the ``umip`` profile with SVM.

Mode is host versus guest; the guest runs at its own CPL on the VMCB save area (AMD APM Vol. 2
Table B-2), and the monitor owns what ``profiles.hardware.ownership`` lists.  With nested paging a
32-bit guest keeps its own CR0 and CR3 (APM Vol. 2 15.25): an unpaged guest runs as it is.  SVM
has no CR0/CR4 read shadows: what the monitor must hide it intercepts (15.9).
"""

from __future__ import annotations

from .. import svm
from .base import Profile, register
from .pentium import NOTES, PASSTHROUGH
from .umip import FEATURES as UMIP_FEATURES

FEATURES = UMIP_FEATURES | {"svm"}

SVM = register(Profile(
    "svm",
    "AMD SVM: the guest in guest mode at its own CPL, under the documented default VMCB intercepts "
    "(nested paging, IOPM and MSRPM; --controls FILE for others)",
    FEATURES, passthrough=PASSTHROUGH, vm=svm.DEFAULT,
    notes=NOTES[:3] + ("mode: host versus guest; the monitor owns only what the VMCB save area "
                       "does not duplicate (APM Vol. 2 Table B-2; profiles.hardware)",
                       "features: those of the umip profile, and SVM")))
