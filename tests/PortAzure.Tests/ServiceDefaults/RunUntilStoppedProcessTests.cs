using System.Net;
using System.Net.Sockets;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.ServiceDefaults;

/// <summary>
/// <see cref="Microsoft.Extensions.Hosting.RelayHost.RunUntilStopped"/> in a real process: a stop asked for while the
/// service starts is an orderly stop, not a failed start.
/// </summary>
[Collection(HeavyTests.Name)]
public class RunUntilStoppedProcessTests
{
    [Theory]
    [InlineData("Ingress")]
    [InlineData("Dispatcher")]
    public async Task Run_SigtermWhileStartWaitsOnASilentRedis_ExitsWithZero(string service)
    {
        // A rolling restart can stop a replica that is still connecting. The start is cut short by the stop; exit 1
        // (or .NET's abort, 134) would read as a crash to the platform and to whoever reads its events.
        using var redis = new SilentServer();
        var config = new Dictionary<string, string?>
        {
            // Nothing answers, so the start waits for the connect timeout (5 s, one try: RedisClientSetup).
            ["ConnectionStrings:redis"] = $"127.0.0.1:{redis.Port}",
            ["Port:ClientSecret"] = TestRuns.Secret,
        };
        using var process = service == "Ingress" ? ServiceProcess.StartIngress(config) : ServiceProcess.StartDispatcher(config);

        // The connect happens in a hosted service's start (RedisConnectionWarmup), after the host has taken over SIGTERM.
        var connected = await Task.WhenAny(redis.Connected, Task.Delay(TimeSpan.FromSeconds(60)));
        Assert.True(connected == redis.Connected, "the service connects to Redis while starting; its output:\n" + process.Output);
        Assert.False(process.ListeningAddress.IsCompleted, "the service is still starting");

        Assert.True(process.Terminate(TimeSpan.FromSeconds(30)), "the service exits on SIGTERM while starting; its output:\n" + process.Output);
        Assert.True(process.ExitCode == 0, $"exit code {process.ExitCode}; its output:\n{process.Output}");
        Assert.DoesNotContain("Unhandled exception", process.Output, StringComparison.Ordinal);
    }

    /// <summary>A TCP server that accepts connections and never answers: a Redis that hangs.</summary>
    private sealed class SilentServer : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly List<Socket> _accepted = [];
        private readonly TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public SilentServer()
        {
            _listener.Start();
            _ = AcceptAsync();
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public Task Connected => _connected.Task;

        private async Task AcceptAsync()
        {
            try
            {
                while (true)
                {
                    var socket = await _listener.AcceptSocketAsync();
                    lock (_accepted)
                    {
                        _accepted.Add(socket);
                    }
                    _connected.TrySetResult();
                }
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Stopped by Dispose.
            }
        }

        public void Dispose()
        {
            _listener.Stop();
            lock (_accepted)
            {
                _accepted.ForEach(socket => socket.Dispose());
            }
        }
    }
}
