"""gfx_host command engine: command set, audit, execution, arbitration (GVT-g's scheduler path).

The path of a guest workload (kernel-mdev.md §4.3-4.8)::

    doorbell (ring tail write)
      -> CommandAuditor.audit(RingState)      shadow ring + batches, check, -> AuditedWorkload
      -> EngineRunner.submit(vgpu, workload)   per-(vGPU, engine) queue
      -> Scheduler (tbs / policies)            whose turn it is, no preemption mid-workload
      -> Executor.execute(workload, memory)    real data movement through GraphicsMemory
      -> on_complete(vgpu, Completion)         seqno, interrupts -> MSI; hang/fault -> no MSI

Modules, one concept each:
- ``memory``    the ``GraphicsMemory`` ops table (translate GM ranges to host views), ``DmaFault``,
                the partition, and ``FakeGraphicsMemory`` (bytearray + page table);
- ``commands``  opcodes, dword encoding, encoder helpers (guest driver) and decoder;
- ``workload``  the records: ``RingState`` -> ``AuditedWorkload`` (ops) -> ``Completion``;
- ``audit``     ``CommandAuditor``: shadow copy + checks, rejections counted by reason;
- ``executor``  ``Executor``: opcode dispatch table, ``CostModel`` (simulated busy time);
- ``scheduler`` ``Scheduler``: GVT-g tbs and the best-effort / equal / fixed-share policies;
- ``runner``    ``EngineRunner``: the per-parent loop (queues, ticks, watchdog, completions), clocks;
- ``bench``     DMA copy ratio and fairness micro-benchmarks;
- ``testing``   ``EngineRig`` (a fake vGPU: guarded memory, ring, auditor), ``spin_workload``.

The command set is documented for guest driver authors in ``services/gfx_host/COMMANDS.md``.

Pure: no grpc, no generated code, no threads; time and memory are injected.

Glossary:
- GM: graphics memory (the GPU address space); partition: a vGPU's low + high GM ranges.
- workload: the commands between ring head and tail at one doorbell, batches included.
- failsafe: vGPU state after an audit failure (set by the owner from ``AuditResult.failsafe``).
- hang: a workload over its watchdog; the vGPU's engine queue is flushed, no interrupt.
"""
