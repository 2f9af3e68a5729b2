/**
 * How many tasks the agent runs at once (its slots, which the coordinator fills up to the memory the agent
 * declares). The operator's figure, or one per CPU core, where every runtime holds each task to its memoryBytes;
 * otherwise one.
 *
 * Why one, and not "slots × the largest task memory ≤ the machine's memory": without a memory cgroup no figure
 * bounds a task. Its spec's memoryGiB is only each process's address space (prlimit --as, at least 1 GiB so Node
 * starts), and a task may run up to maxProcesses processes (1,024 by default), plus a tmpfs /tmp and /dev/shm of
 * that size each; an issue report measured six children holding 3.6 GiB and /tmp another 1 GB under
 * `memoryGiB: 1`. Such a bound is far beyond any machine, so the product rule gives one slot too, without
 * pretending there is a per-task figure. With one task at a time, a task that overruns can only starve itself,
 * never a neighbour that stayed within its limit.
 */

export interface SlotsInput {
  /** The operator's figure (ProviderAgentOptions.slots), if any. */
  requested: number | undefined;
  cores: number;
  /** Whether every offered runtime holds each task to its memory limit as a whole (Runtime.taskMemoryBounded). */
  memoryBounded: boolean;
}

export interface Slots {
  slots: number;
  /** Set when the slots are fewer than asked for or than the cores: the operator is told why. */
  warning?: string;
}

export function taskSlots({ requested, cores, memoryBounded }: SlotsInput): Slots {
  const wanted = Math.max(1, Math.floor(requested ?? cores));
  if (memoryBounded || wanted === 1) return { slots: wanted };
  return {
    slots: 1,
    warning:
      `running 1 task at a time instead of ${wanted}: tasks cannot be held to their memory limit as a whole here ` +
      '(no memory cgroup), so several at once could take more memory than their specs reserve between them',
  };
}
