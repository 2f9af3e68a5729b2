/**
 * Where a Docker engine would answer here, if anywhere: DOCKER_HOST, else the default socket. A
 * module of its own so the agent can ask without loading the container runtime (an idle agent on
 * a machine without Docker never does).
 */
import { existsSync } from 'node:fs';

export function dockerEndpoint(env: NodeJS.ProcessEnv = process.env, socketExists = existsSync): string | undefined {
  if (env.DOCKER_HOST) return env.DOCKER_HOST;
  return socketExists('/var/run/docker.sock') ? 'unix:///var/run/docker.sock' : undefined;
}
