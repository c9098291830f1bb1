// SPDX-License-Identifier: GPL-2.0-only
/*
 * qgpu_reset_voter: a test-only driver for QEMU's edu device (1234:11e8)
 * that answers every PCIe error with PCI_ERS_RESULT_NEED_RESET.
 *
 * Put beside a qgpu, as function 1 of its slot, it makes the recovery of a
 * non-fatal error -- for which qgpu votes CAN_RECOVER and keeps running --
 * skip mmio_enabled() and call every driver's slot_reset() without a reset
 * having happened first (Linux 6.12 resets nothing there; a platform may).
 * That is the path of review item 5, which no qgpu-only machine reaches.
 */
#include <linux/module.h>
#include <linux/pci.h>

static pci_ers_result_t voter_error_detected(struct pci_dev *pdev,
					     pci_channel_state_t state)
{
	dev_info(&pdev->dev, "PCIe error (channel state %d): voting for a reset\n",
		 state);
	return PCI_ERS_RESULT_NEED_RESET;
}

static pci_ers_result_t voter_slot_reset(struct pci_dev *pdev)
{
	return PCI_ERS_RESULT_RECOVERED;
}

static const struct pci_error_handlers voter_err_handlers = {
	.error_detected = voter_error_detected,
	.slot_reset = voter_slot_reset,
};

static int voter_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	return pcim_enable_device(pdev);
}

static const struct pci_device_id voter_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },		/* QEMU's edu */
	{ }
};
MODULE_DEVICE_TABLE(pci, voter_ids);

static struct pci_driver voter_driver = {
	.name = "qgpu_reset_voter",
	.id_table = voter_ids,
	.probe = voter_probe,
	.err_handler = &voter_err_handlers,
};
module_pci_driver(voter_driver);

MODULE_DESCRIPTION("Test only: a PCI driver that votes for a reset on any PCIe error");
MODULE_LICENSE("GPL");
