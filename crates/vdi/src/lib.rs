//! vdisk-vdi: VirtualBox VDI images (placeholder).
