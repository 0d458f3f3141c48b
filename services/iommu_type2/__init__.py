"""iommu_type2: the type2 IOMMU mapper (containers, DMA map/unmap, pins, unmap notification, dirty tracking)."""
