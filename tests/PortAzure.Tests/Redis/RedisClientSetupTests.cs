using Aspire.StackExchange.Redis;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Redis;

public class RedisClientSetupTests
{
    [Fact]
    public void AddPortAzureRedisClient_NoTracingSwitch_TurnsRedisCommandSpansOff()
    {
        var settings = Register(new Dictionary<string, string?>());

        Assert.True(settings.DisableTracing);
    }

    [Theory]
    [InlineData("Aspire:StackExchange:Redis:DisableTracing")]
    [InlineData("Aspire:StackExchange:Redis:redis:DisableTracing")]
    public void AddPortAzureRedisClient_AspireSwitchFalse_KeepsRedisCommandSpans(string key)
    {
        var settings = Register(new Dictionary<string, string?> { [key] = "false" });

        Assert.False(settings.DisableTracing);
    }

    [Fact]
    public void AddPortAzureRedisClient_NamedSwitchTrue_WinsOverTheGeneralFalse()
    {
        var settings = Register(new Dictionary<string, string?>
        {
            ["Aspire:StackExchange:Redis:DisableTracing"] = "false",
            ["Aspire:StackExchange:Redis:redis:DisableTracing"] = "true",
        });

        Assert.True(settings.DisableTracing);
    }

    [Fact]
    public void AddPortAzureRedisClient_Connection_CompletesRepliesOnTheDotNetThreadPool()
    {
        Assert.Same(SocketManager.ThreadPool, SocketManagerOf(new Dictionary<string, string?>()));
    }

    [Fact]
    public async Task AddPortAzureRedisClient_UnknownSocketManager_StartFailsNamingTheSetting()
    {
        // Thrown while the services were registered, it escaped the host (an abort) and hid the other options' errors.
        var builder = NewBuilder(new Dictionary<string, string?> { [RedisClientSetup.SocketManagerKey] = "Fastest" });
        builder.AddPortAzureRedisClient();
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());

        Assert.Contains("Redis:SocketManager must be ThreadPool or Dedicated, not 'Fastest'", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Dedicated")]
    [InlineData("dedicated")]
    public void AddPortAzureRedisClient_SocketManagerDedicatedInAnyCase_CompletesRepliesOnStackExchangeRedisOwnPool(string value)
    {
        Assert.Same(SocketManager.Shared, SocketManagerOf(new Dictionary<string, string?> { [RedisClientSetup.SocketManagerKey] = value }));
    }

    [Theory]
    [InlineData("", "ConnectionStrings:redis is empty")]
    [InlineData("127.0.0.1:1,asyncTimeout=abc", "ConnectionStrings:redis cannot be read as a Redis connection string: Keyword 'asyncTimeout' requires an integer value")]
    [InlineData("127.0.0.1:1,asyncTimeot=500", "ConnectionStrings:redis cannot be read as a Redis connection string: Keyword 'asyncTimeot' is not supported.")]
    // Read by the client as one host name, password and all, which its connection errors then print.
    [InlineData("rediss://default:s3cret-pw@cache.example:6380", "ConnectionStrings:redis is a URL; StackExchange.Redis takes host:port")]
    public async Task Start_ConnectionStringRedisCannotRead_FailsNamingTheKeyWithTheOtherErrors(string connectionString, string expected)
    {
        // Read only when the connection was made, after the options' check: it stopped the start alone, naming no key.
        var builder = NewBuilder(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = connectionString,
            [RedisClientSetup.SocketManagerKey] = "Fastest",
        });
        builder.AddPortAzureRedisClient();
        using var host = builder.Build();

        var error = (await Assert.ThrowsAnyAsync<Exception>(() => host.StartAsync())).ToString();

        Assert.Contains(expected, error, StringComparison.Ordinal);
        Assert.Contains("Redis:SocketManager must be ThreadPool or Dedicated", error, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cret", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("127.0.0.1:1,password=first-half,second-half=of-it")]
    [InlineData("127.0.0.1:1, Password = first-half,second-half=of-it")]
    [InlineData("127.0.0.1:1,password=first-half,sec'ond-half'=of-it")]
    public async Task Start_ConnectionStringWithACommaInItsPassword_FailsWithoutQuotingThePassword(string connectionString)
    {
        // The client reads the password's tail as an option (one with an '='), and its message quotes it.
        var builder = NewBuilder(new Dictionary<string, string?> { ["ConnectionStrings:redis"] = connectionString });
        builder.AddPortAzureRedisClient();
        using var host = builder.Build();

        var error = (await Assert.ThrowsAnyAsync<Exception>(() => host.StartAsync())).ToString();

        Assert.Contains("ConnectionStrings:redis cannot be read as a Redis connection string: an option it does not know", error, StringComparison.Ordinal);
        Assert.DoesNotContain("ond-half", error, StringComparison.Ordinal);
        Assert.DoesNotContain("first-half", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("redis://default:s3cret-pw@127.0.0.1:1", "ConnectionStrings:redis is a URL")]
    [InlineData("127.0.0.1:1,password=first-half,s3cret=of-it", "an option it does not know")]
    public async Task Start_ServiceTakesTheConnectionInItsConstructor_OptionsAreCheckedBeforeItConnects(string connectionString, string expected)
    {
        // The host builds its hosted services before it runs the start-up checks: one that takes the connection (as the
        // Dispatcher's do) had it made with a string the checks refuse, and the client's errors printed the password.
        var builder = NewBuilder(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = connectionString,
            [RedisClientSetup.SocketManagerKey] = "Fastest",
        });
        var logs = new LogSink();
        builder.Logging.SetMinimumLevel(LogLevel.Trace);
        builder.Logging.AddProvider(logs);
        builder.AddPortAzureRedisClient();
        builder.Services.AddHostedService<NeedsRedis>();
        using var host = builder.Build();

        var error = (await Assert.ThrowsAnyAsync<Exception>(() => host.StartAsync())).ToString();

        Assert.Contains(expected, error, StringComparison.Ordinal);
        Assert.Contains("Redis:SocketManager must be ThreadPool or Dedicated", error, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cret", error, StringComparison.Ordinal);
        logs.AssertNoneContain(["s3cret"]);
    }

    private sealed class NeedsRedis(IConnectionMultiplexer redis) : BackgroundService
    {
        protected override Task ExecuteAsync(CancellationToken stoppingToken) => redis.GetDatabase().PingAsync();
    }

    [Fact]
    public void Register_Default_OneConnectTryAtStartAndReconnectsAtMost2sApart()
    {
        var options = OptionsOf([]);

        // Three tries would hold the start for three connect timeouts when nothing answers.
        Assert.Equal(1, options.ConnectRetry);
        // However long Redis was away, the next reconnect try is at most ~2 s off (the default waits up to 10 s).
        Assert.True(options.ReconnectRetryPolicy!.ShouldRetry(50, 2_001));
    }

    [Fact]
    public void Register_AspireSettingSetsConnectRetry_ItsValueStands()
    {
        var options = OptionsOf(new() { ["Aspire:StackExchange:Redis:ConfigurationOptions:ConnectRetry"] = "4" });

        Assert.Equal(4, options.ConnectRetry);
    }

    [Fact]
    public void Register_ConnectionStringSetsConnectRetry_ItsValueStands()
    {
        var options = OptionsOf(new() { ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false,connectRetry=4" });

        Assert.Equal(4, options.ConnectRetry);
    }

    [Fact]
    public async Task Start_Ingress_ConnectsToRedisBeforeTheFirstRequest()
    {
        await using var lease = await SharedRedis.LeaseAsync();
        var clientName = "warmup-" + Guid.NewGuid().ToString("N");

        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = $"{lease.ConnectionString},name={clientName}",
            ["Port:ClientSecret"] = TestRuns.Secret,
        });

        // No request has been sent: the connection exists because start-up made it.
        await using var observer = await ConnectionMultiplexer.ConnectAsync(lease.ConnectionString + ",allowAdmin=true");
        await Eventually.HoldsAsync(async () => (await observer.GetServers()[0].ClientListAsync()).Any(c => c.Name == clientName),
            TimeSpan.FromSeconds(10), "the Ingress's connection is in Redis's client list");
    }

    [Fact]
    public async Task Start_RedisUnreachable_StartsAndLogsAWarning()
    {
        using var closed = new ClosedPort();
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            // No abortConnect=false here: Aspire's default must be what lets the service start.
            ["ConnectionStrings:redis"] = $"127.0.0.1:{closed.Port},connectTimeout=500",
            ["Port:ClientSecret"] = TestRuns.Secret,
        });

        Assert.Contains(ingress.Logs.Lines, l => l.StartsWith("Warning PortAzure.Redis.RedisConnectionWarmup[3001]", StringComparison.Ordinal));
    }

    private static StackExchangeRedisSettings Register(Dictionary<string, string?> config)
    {
        var builder = NewBuilder(config);
        StackExchangeRedisSettings? seen = null;
        builder.AddPortAzureRedisClient(settings => seen = settings);
        Assert.NotNull(seen);
        return seen;
    }

    /// <summary>The socket manager the registered connection's options carry, given <paramref name="config"/>.</summary>
    private static SocketManager? SocketManagerOf(Dictionary<string, string?> config) => OptionsOf(config).SocketManager;

    [Fact]
    public void AddPortAzureRedisClient_RedisMemoryCheck_OneInstanceForEveryProbe()
    {
        // Its warning that it is blind is written once per process: a check made anew at each probe would write it at each.
        var builder = NewBuilder([]);
        builder.AddPortAzureRedisClient();
        using var host = builder.Build();
        var registration = Assert.Single(host.Services.GetRequiredService<IOptions<HealthCheckServiceOptions>>().Value.Registrations,
            r => r.Name == RedisMemoryHealthCheck.Name);

        Assert.Same(registration.Factory(host.Services), registration.Factory(host.Services));
    }

    /// <summary>The registered connection's options, given <paramref name="config"/>.</summary>
    private static ConfigurationOptions OptionsOf(Dictionary<string, string?> config)
    {
        var builder = NewBuilder(config);
        builder.AddPortAzureRedisClient();
        using var host = builder.Build();
        return host.Services.GetRequiredService<IOptionsMonitor<ConfigurationOptions>>().Get(Options.DefaultName);
    }

    /// <summary>A host builder with <paramref name="config"/> and a Redis connection string nothing connects to.</summary>
    private static HostApplicationBuilder NewBuilder(Dictionary<string, string?> config)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        var values = new Dictionary<string, string?>(config);
        values.TryAdd("ConnectionStrings:redis", "127.0.0.1:1,abortConnect=false");
        builder.Configuration.AddInMemoryCollection(values);
        return builder;
    }
}
