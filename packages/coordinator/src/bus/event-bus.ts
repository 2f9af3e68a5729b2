/**
 * In-process fan-out of "something changed" notices. Subscribers re-read the database;
 * the bus never carries state that is not already committed there.
 */
import { EventEmitter } from 'node:events';

export interface BusEvents {
  /** A job or one of its tasks changed state. */
  'job.changed': [jobId: string];
  /** New log lines were committed for a job (readers fetch them from the database). */
  'job.log': [jobId: string];
  /** Capacity or queued work changed: the scheduler should look again. */
  'work.available': [];
}

export class EventBus {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  emit<K extends keyof BusEvents>(event: K, ...args: BusEvents[K]): void {
    this.emitter.emit(event, ...args);
  }

  on<K extends keyof BusEvents>(event: K, listener: (...args: BusEvents[K]) => void): () => void {
    this.emitter.on(event, listener as (...args: unknown[]) => void);
    return () => this.emitter.off(event, listener as (...args: unknown[]) => void);
  }
}
