"""The limits a Triton kernel and its op share, as plain numbers: no Triton import, so the
engine's op modules (fastadv/ops) read them where Triton is missing. A kernel module imports
torch, triton, its siblings here (.common, .limits) and fastadv.backend, nothing else."""

#: the widest rows (classes) the logits family's Triton kernels take, a row being one block;
#: ``auto`` runs wider ones on the CUDA C++ kernels
LOGITS_MAX_COLUMNS = 16384
#: the most tasks min_norm_weights takes (its kernels keep a row's Q in registers), and the longest
#: row simplex_project and simplex_distance_sq hold in registers (longer ones take the wide path)
SIMPLEX_MAX_TASKS = 32
