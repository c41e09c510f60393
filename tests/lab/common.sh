# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Shared by the host-side lab scripts (install, vm, demo, selftest): where
# things are, how to report, and how to find a kernel that can run the lab.
# Sourced, never executed. Defines only variables prefixed LAB_ and functions
# prefixed lab_.

# The lab's own directory and the repository root, whatever the caller's cwd.
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
LAB_REPO=$(cd "$LAB_DIR/../.." && pwd -P)

# The Python venv holding virtme-ng (ignored by git, see /.gitignore).
LAB_VENV="$LAB_DIR/.venv"
# Exact versions of virtme-ng and its dependencies (pip freeze of a working venv).
LAB_REQUIREMENTS="$LAB_DIR/requirements.txt"

# Debian packages the lab needs. kubectl is handled apart (see install).
LAB_APT_PACKAGES=(
	qemu-system-x86  # the emulator (TCG; KVM is not used)
	linux-image-amd64 # Debian's generic kernel: ip_vs*, ipip, veth, bridge, 9p as modules
	busybox-static   # virtme-ng builds its initramfs with it when it needs one
	ipvsadm          # the oracle the agent is compared with
	keepalived       # the VRRP interoperability peer
	iproute2         # ip netns / link / addr / route
	curl             # the lab's HTTP client
	nftables         # FullNAT's masquerade
	procps           # sysctl, pkill for the guest-side helpers
	lua5.1           # runs deploy/argocd's health checks (Argo CD's Lua 5.1) in controller/tests/gitops.rs
)

# Exit status of the lab scripts when the lab itself cannot run (as opposed
# to the command run in it failing), after git bisect's "cannot test" code.
LAB_CANNOT_RUN=125

# Print the comment block at the top of script $1 (its usage).
lab_usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"; }

lab_say() { printf 'lab: %s\n' "$*" >&2; }
lab_die() {
	printf 'lab: error: %s\n' "$*" >&2
	exit "$LAB_CANNOT_RUN"
}

# Python used to build the venv: Debian's own, never a pyenv/asdf shim, so the
# venv keeps working whatever version manager the user switches to.
LAB_PYTHON=/usr/bin/python3

# Prints "VERSION" of the kernel image $1 if the lab can boot it, else prints
# why not on stdout and returns 1. The lab needs IPVS and the 9p file system
# (virtme-ng shares the host's file system over virtio-9p); Debian's "cloud"
# flavour lacks 9p, the generic one (linux-image-amd64) has both.
lab_kernel_check() {
	local image=$1 ver mods
	if [[ ${image##*/} != vmlinuz-* ]]; then
		echo "$image is not a kernel image named vmlinuz-VERSION"
		return 1
	fi
	ver=${image##*/vmlinuz-}
	mods=/lib/modules/$ver
	if [[ ! -r $image ]]; then
		echo "$image is not readable by $(id -un)"
		return 1
	fi
	if [[ ! -d $mods ]]; then
		echo "$image has no modules directory $mods"
		return 1
	fi
	if ! lab_kernel_has "$mods" kernel/net/netfilter/ipvs/ip_vs.ko; then
		echo "$ver has no IPVS (no ip_vs module in $mods)"
		return 1
	fi
	if ! lab_kernel_has "$mods" kernel/net/9p/9pnet_virtio.ko ||
		! lab_kernel_has "$mods" kernel/fs/9p/9p.ko; then
		echo "$ver has no 9p file system (9p/9pnet_virtio modules missing in $mods; the cloud flavour lacks them)"
		return 1
	fi
	echo "$ver"
}

# lab_kernel_has MODDIR REL_PATH_WITHOUT_COMPRESSION_SUFFIX: module file present
# (possibly compressed) or built into the kernel.
lab_kernel_has() {
	local mods=$1 rel=$2 f
	for f in "$mods/$rel" "$mods/$rel".{xz,zst,gz}; do
		[[ -e $f ]] && return 0
	done
	[[ -r $mods/modules.builtin ]] && grep -qx "$rel" "$mods/modules.builtin"
}

# Sets LAB_KERNEL (image path) and LAB_KERNEL_VERSION to the newest
# /boot/vmlinuz-*-amd64 the lab can boot, or to $LAB_KERNEL if the user set
# it. On failure returns 1 with the reasons in LAB_KERNEL_PROBLEMS.
lab_find_kernel() {
	local image why candidates=()
	LAB_KERNEL_PROBLEMS=""
	if [[ -n ${LAB_KERNEL:-} ]]; then
		candidates=("$LAB_KERNEL")
	else
		shopt -s nullglob
		candidates=(/boot/vmlinuz-*-amd64)
		shopt -u nullglob
		if ((${#candidates[@]} == 0)); then
			LAB_KERNEL_PROBLEMS="no kernel image /boot/vmlinuz-*-amd64"
			return 1
		fi
		# Newest first.
		mapfile -t candidates < <(printf '%s\n' "${candidates[@]}" | sort -V -r)
	fi
	for image in "${candidates[@]}"; do
		if why=$(lab_kernel_check "$image"); then
			LAB_KERNEL=$image
			LAB_KERNEL_VERSION=$why
			return 0
		fi
		LAB_KERNEL_PROBLEMS+="${LAB_KERNEL_PROBLEMS:+; }$why"
	done
	return 1
}
