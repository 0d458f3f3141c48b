"""iommu_type2: the type2 IOMMU mapper (containers, map/unmap, pins, unmap notification, dirty)."""
