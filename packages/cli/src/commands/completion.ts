/**
 * `gridwork completion bash|zsh|fish`: a completion script built from the command tree, so it
 * never falls behind the commands. Install: `gridwork completion bash > ~/.local/share/bash-completion/completions/gridwork`
 * (zsh: `gridwork completion zsh > "\${fpath[1]}/_gridwork"`; fish: `… fish > ~/.config/fish/completions/gridwork.fish`).
 */
import type { Command } from 'commander';
import { CliExit, EXIT_USAGE } from '../output.ts';

interface Node {
  path: string[];
  subcommands: string[];
  options: string[];
}

function walk(c: Command, path: string[], out: Node[]): void {
  const options = c.options.flatMap((o) => [o.long, o.short].filter((x): x is string => Boolean(x)));
  out.push({ path, subcommands: c.commands.map((s) => s.name()), options: [...options, '--help'] });
  for (const s of c.commands) walk(s, [...path, s.name()], out);
}

function bash(nodes: Node[]): string {
  const known = nodes.map((n) => n.path.join('/')).filter(Boolean);
  const cases = nodes.map((n) => `    "${n.path.join('/')}") words="${[...n.subcommands, ...n.options].join(' ')}" ;;`).join('\n');
  return `# bash completion for gridwork
_gridwork() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" w i words=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$w" in -*) continue ;; esac
    case "|${known.join('|')}|" in *"|\${path:+$path/}$w|"*) path="\${path:+$path/}$w" ;; esac
  done
  case "$path" in
${cases}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
  [[ \${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
  return 0
}
complete -F _gridwork gridwork
`;
}

function fish(nodes: Node[]): string {
  const lines = ['# fish completion for gridwork', 'complete -c gridwork -f'];
  for (const n of nodes) {
    const cond = n.path.length === 0 ? '__fish_use_subcommand' : `__fish_seen_subcommand_from ${n.path[n.path.length - 1]}`;
    for (const s of n.subcommands) lines.push(`complete -c gridwork -n '${cond}' -a ${s}`);
    for (const o of n.options.filter((x) => x.startsWith('--'))) lines.push(`complete -c gridwork -n '${cond}' -l ${o.slice(2)}`);
  }
  return `${lines.join('\n')}\n`;
}

export function registerCompletionCommand(program: Command): void {
  program
    .command('completion <shell>')
    .description('print a shell completion script: bash, zsh or fish')
    .action((shell: string) => {
      const nodes: Node[] = [];
      walk(program, [], nodes);
      if (shell === 'bash') process.stdout.write(bash(nodes));
      else if (shell === 'zsh') process.stdout.write(`#compdef gridwork\nautoload -U +X bashcompinit && bashcompinit\n${bash(nodes)}`);
      else if (shell === 'fish') process.stdout.write(fish(nodes));
      else throw new CliExit(EXIT_USAGE, `unknown shell "${shell}": must be one of bash | zsh | fish`);
    });
}
