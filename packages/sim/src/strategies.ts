/**
 * How each kind of simulated provider behaves. A provider cannot tell a check (audit, referee,
 * canary) from fresh work — the coordinator sends both as ordinary assignments — so every
 * strategy answers every task the same way; only the colluders recognise a task their partner
 * already answered (the same command, index and inputs) and repeat that answer.
 *
 *   honest         computes every task, answers challenges with real work, bills the work's time
 *   always-wrong   makes every output up
 *   wrong-q        makes an output up with probability q (a coin per task)
 *   lazy           computes small tasks; on large ones stops halfway and returns the truncated output
 *   fake-hardware  claims a benchmark class `claimFactor` times its own: correct outputs, but it
 *                  bills the time its slower hardware really takes, and answers capacity
 *                  challenges too late (its hardware cannot meet a deadline sized to the claim)
 *   colluding      pairs of one hidden operator: makes an output up with probability q and, when
 *                  it meets a task its partner already answered (an audit or a referee of the
 *                  partner), returns the partner's answer, right or wrong
 *   whitewashing   makes outputs up with probability q; once caught, leaves the network and
 *                  comes back under a new key with fresh stake (the simulation does the leaving)
 */
import { correctOutput, madeUpOutput, type SimTask, truncatedOutput } from './sim-task.ts';
import { unitOf } from './seeded.ts';

export const STRATEGIES = ['always-wrong', 'wrong-q', 'lazy', 'fake-hardware', 'colluding', 'whitewashing'] as const;
export type Strategy = (typeof STRATEGIES)[number];
export type Role = 'honest' | Strategy;

export function isStrategy(s: string): s is Strategy {
  return (STRATEGIES as readonly string[]).includes(s);
}

/** Providers one group of a strategy needs. */
export const GROUP_SIZE: Record<Strategy, number> = {
  'always-wrong': 1,
  'wrong-q': 1,
  lazy: 1,
  'fake-hardware': 1,
  colluding: 2,
  whitewashing: 1,
};

export interface Answer {
  output: Buffer;
  /** The output is not the faithful one. */
  cheated: boolean;
}

/** What the members of one hidden operator share. */
export interface Operator {
  name: string;
  /** Task key → the answer a member gave it. */
  answers: Map<string, Buffer>;
}

export interface Behaviour {
  role: Role;
  answer(task: SimTask): Answer;
  /** Billed run time ÷ the work's run time on the claimed hardware. */
  billFactor: number;
  /** Claimed benchmark ÷ the hardware's real one. */
  claimFactor: number;
  /** How capacity challenges are answered. */
  challenges: 'honest' | 'late';
}

export interface BehaviourOptions {
  seed: string;
  /** The provider's (stable) name: its coins are its own. */
  name: string;
  /** Chance that wrong-q, colluding and whitewashing make an output up. */
  q: number;
  /** Tasks with at least this much work are "large" for the lazy provider. */
  lazyAboveMs: number;
  /** How much faster than it is fake-hardware claims to be. */
  fakeFactor: number;
  operator?: Operator;
}

export function behaviourOf(role: Role, o: BehaviourOptions): Behaviour {
  const right = (task: SimTask): Answer => ({ output: correctOutput(task), cheated: false });
  const wrong = (task: SimTask, who = o.name): Answer => ({ output: madeUpOutput(task, who), cheated: true });
  const coin = (task: SimTask) => unitOf(o.seed, 'coin', o.name, task.key) < o.q;
  const base = { role, billFactor: 1, claimFactor: 1, challenges: 'honest' as const };
  switch (role) {
    case 'honest':
      return { ...base, answer: right };
    case 'always-wrong':
      return { ...base, answer: (t) => wrong(t) };
    case 'wrong-q':
    case 'whitewashing':
      return { ...base, answer: (t) => (coin(t) ? wrong(t) : right(t)) };
    case 'lazy':
      return { ...base, answer: (t) => (t.workMs >= o.lazyAboveMs ? { output: truncatedOutput(t), cheated: true } : right(t)) };
    case 'fake-hardware':
      return { ...base, answer: right, billFactor: o.fakeFactor, claimFactor: o.fakeFactor, challenges: 'late' };
    case 'colluding': {
      const op = o.operator;
      if (!op) throw new Error('a colluding provider needs its operator');
      return {
        ...base,
        answer: (t) => {
          const known = op.answers.get(t.key);
          const a = known ? { output: known, cheated: !known.equals(correctOutput(t)) } : coin(t) ? wrong(t, op.name) : right(t);
          op.answers.set(t.key, a.output);
          return a;
        },
      };
    }
  }
}
