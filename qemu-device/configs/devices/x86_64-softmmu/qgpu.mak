# Device set for the qgpu build of qemu-system-x86_64 (configure
# --without-default-devices --with-devices-x86_64=qgpu): the q35 machine and
# what the qgpu rig uses on it, and nothing else, to keep the build short.

CONFIG_Q35=y
CONFIG_PCIE_PORT=y          # pcie-root-port, qgpu sits behind one
CONFIG_XIO3130=y            # x3130-upstream + xio3130-downstream: a switch, for qgpu P2P
CONFIG_VTD=y                # intel-iommu, for DMA through a vIOMMU
CONFIG_AMD_IOMMU=y          # amd-iommu: DMA through AMD-Vi (device tests)
CONFIG_VIRTIO_IOMMU=y       # virtio-iommu-pci: the paravirtual vIOMMU
CONFIG_QGPU=y
CONFIG_EDU=y                # baseline for the DMA benchmark
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y         # user-mode networking for guest SSH
CONFIG_VIRTIO_RNG=y         # entropy for the guest's SSH host keys
CONFIG_ACPI_VMGENID=y       # vmgenid: guests restored from one template reseed their RNGs
CONFIG_E1000E_PCI_EXPRESS=y # q35's default NIC model
CONFIG_PCIE_PCI_BRIDGE=y    # a conventional PCI bus, to test that qgpu refuses it
CONFIG_PCI_BRIDGE=y         # pcie-pci-bridge links against its hotplug code
