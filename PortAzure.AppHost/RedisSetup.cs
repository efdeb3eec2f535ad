using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace PortAzure.AppHost;

/// <summary>Where the relay's Redis comes from (<c>Redis:Mode</c>).</summary>
internal enum RedisMode
{
    /// <summary>Container if a container runtime answers, else redis-server from PATH, else an error naming the fixes.</summary>
    Auto,

    /// <summary>The Redis container (<c>AddRedis</c>), with AOF on a named volume. What a manifest gets unless told otherwise.</summary>
    Container,

    /// <summary><c>redis-server</c> from PATH as an executable resource, AOF on in a data folder that survives restarts.</summary>
    Executable,

    /// <summary>
    /// An existing Redis given as <c>ConnectionStrings:redis</c>; in a manifest, a secret parameter the deployment fills
    /// (a managed Redis), and no container.
    /// </summary>
    ConnectionString,
}

/// <summary>A redis-server process run by the AppHost that the services reference like the Redis container.</summary>
internal sealed class RedisServerResource(string name, string workingDirectory)
    : ExecutableResource(name, "redis-server", workingDirectory), IResourceWithConnectionString
{
    public const string EndpointName = "tcp";

    public EndpointReference PrimaryEndpoint => new(this, EndpointName);

    public ReferenceExpression ConnectionStringExpression =>
        ReferenceExpression.Create($"{PrimaryEndpoint.Property(EndpointProperty.HostAndPort)}");
}

internal static class RedisSetup
{
    public const string ModeKey = "Redis:Mode";
    public const string DataDirectoryKey = "Redis:DataDirectory";
    public const string PortKey = "Redis:Port";
    public const string AppendFsyncKey = "Redis:AppendFsync";
    public const string VolumeName = "portazure-redis-data";

    public static IResourceBuilder<IResourceWithConnectionString> AddRelayRedis(this IDistributedApplicationBuilder builder)
    {
        var mode = ResolveMode(builder);
        switch (mode)
        {
            case RedisMode.ConnectionString:
                return builder.AddConnectionString(ResourceNames.Redis);

            case RedisMode.Executable:
                return builder.AddRedisServer();

            default:
                var fsync = AppendFsync(builder);
                return builder.AddRedis(ResourceNames.Redis)
                    .WithDataVolume(VolumeName)
                    // AOF: an entry Redis acknowledged survives a restart (RDB snapshots alone would lose up to
                    // a minute). Aspire starts the container as `sh -c "redis-server ..."`, so the options must
                    // go into that script: arguments after it would reach sh, not Redis.
                    .WithArgs(context => AppendToRedisCommand(context.Args, $"--appendonly yes --appendfsync {fsync}"));
        }
    }

    internal static void AppendToRedisCommand(IList<object> args, string options)
    {
        for (var i = 0; i < args.Count; i++)
        {
            if (args[i] is string command && command.StartsWith("redis-server", StringComparison.Ordinal))
            {
                args[i] = $"{command} {options}";
                return;
            }
        }
        throw new InvalidOperationException("Aspire's Redis container command line has changed; persistence options could not be added to it.");
    }

    private static IResourceBuilder<IResourceWithConnectionString> AddRedisServer(this IDistributedApplicationBuilder builder)
    {
        // A relative directory is taken from the AppHost's folder, as the default is, not from wherever dotnet run was started.
        var dataDirectory = Path.GetFullPath(builder.Configuration[DataDirectoryKey] is { Length: > 0 } configured ? configured : ".redis-data",
            builder.AppHostDirectory);
        Directory.CreateDirectory(dataDirectory);
        var port = int.TryParse(builder.Configuration[PortKey], out var configuredPort) && configuredPort > 0 ? configuredPort : FreePort();
        var resource = new RedisServerResource(ResourceNames.Redis, dataDirectory);
        // Running is not ready: redis-server may still be loading its AOF. Dependants wait for a PING.
        var healthCheck = $"{ResourceNames.Redis}-ping";
        builder.Services.AddHealthChecks().AddAsyncCheck(healthCheck, async cancellationToken =>
        {
            try
            {
                await using var connection = await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync($"127.0.0.1:{port},abortConnect=true,connectTimeout=1000");
                await connection.GetDatabase().PingAsync();
                return Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy();
            }
            catch (StackExchange.Redis.RedisException ex)
            {
                return Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Unhealthy(ex.Message);
            }
        });
        return builder.AddResource(resource)
            .WithHealthCheck(healthCheck)
            .WithArgs("--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind", "127.0.0.1",
                "--dir", dataDirectory, "--appendonly", "yes", "--appendfsync", AppendFsync(builder),
                "--save", "", "--protected-mode", "yes")
            .WithEndpoint(port: port, targetPort: port, scheme: "tcp", name: RedisServerResource.EndpointName, isProxied: false)
            .ExcludeFromManifest();
    }

    private static string AppendFsync(IDistributedApplicationBuilder builder) =>
        builder.Configuration[AppendFsyncKey] switch
        {
            null or "" => "everysec",
            "always" => "always",
            "everysec" => "everysec",
            // A local speed-up only: the published Redis holds every queued run, and with "no" the kernel decides when
            // an acknowledged entry reaches the disk. The publishing machine's setting must not make that the deployment's.
            "no" => builder.ExecutionContext.IsPublishMode ? "everysec" : "no",
            var other => throw new InvalidOperationException($"{AppendFsyncKey} must be 'always', 'everysec' or 'no', not '{other}'."),
        };

    private static RedisMode ResolveMode(IDistributedApplicationBuilder builder)
    {
        var configured = builder.Configuration[ModeKey];
        var mode = RedisMode.Auto;
        if (!string.IsNullOrEmpty(configured))
        {
            // A name only (Enum.TryParse would take numbers and comma lists), checked in both modes: a typo would
            // otherwise publish the container where a managed Redis was meant.
            mode = Enum.GetNames<RedisMode>().FirstOrDefault(n => n.Equals(configured, StringComparison.OrdinalIgnoreCase)) is { } name
                ? Enum.Parse<RedisMode>(name)
                : throw new InvalidOperationException($"{ModeKey} must be auto, container, executable or connectionstring, not '{configured}'.");
        }
        if (builder.ExecutionContext.IsPublishMode)
        {
            // Only an explicit connectionstring leaves the container out (for a managed Redis): auto, or a local
            // executable or ConnectionStrings:redis on the publishing machine, says nothing about the deployment.
            return mode == RedisMode.ConnectionString ? RedisMode.ConnectionString : RedisMode.Container;
        }
        if (mode != RedisMode.Auto)
        {
            return mode;
        }
        if (!string.IsNullOrEmpty(builder.Configuration.GetConnectionString(ResourceNames.Redis)))
        {
            return RedisMode.ConnectionString;
        }
        if (ContainerRuntimeIsHealthy())
        {
            return RedisMode.Container;
        }
        if (IsOnPath("redis-server"))
        {
            return RedisMode.Executable;
        }
        throw new InvalidOperationException(
            "No Redis for the relay: no container runtime answers and redis-server is not on PATH. " +
            "Install redis-server (Debian/Ubuntu: 'sudo apt-get install -y redis-server'), start Docker or Podman, " +
            "or point the AppHost at an existing Redis with ConnectionStrings__redis=host:port.");
    }

    private static bool ContainerRuntimeIsHealthy()
    {
        // Aspire 13 reads ASPIRE_CONTAINER_RUNTIME (its messages name it) and still the older DOTNET_ name.
        var runtime = Environment.GetEnvironmentVariable("ASPIRE_CONTAINER_RUNTIME")
            ?? Environment.GetEnvironmentVariable("DOTNET_ASPIRE_CONTAINER_RUNTIME") ?? "docker";
        if (!IsOnPath(runtime))
        {
            return false;
        }
        try
        {
            // Plain "info", as run.sh asks: it fails when Docker's daemon is not there, and a template such as
            // {{.ServerVersion}} would fail on Podman, whose info has no such field.
            using var process = Process.Start(new ProcessStartInfo(runtime, "info")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            });
            if (process is null)
            {
                return false;
            }
            // Drained and dropped: an unread pipe that fills up (info prints kilobytes) would block the runtime until killed.
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            if (!process.WaitForExit(TimeSpan.FromSeconds(5)))
            {
                process.Kill(entireProcessTree: true);
                return false;
            }
            return process.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

    private static bool IsOnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Any(dir => File.Exists(Path.Combine(dir, program)));

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
