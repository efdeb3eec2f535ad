using Microsoft.Extensions.DependencyInjection;
using StackExchange.Redis;

namespace PortAzure.Tests.Infrastructure;

/// <summary>The whole relay in-process over real sockets: emulator, Dispatcher(s), Ingress, on a real Redis.</summary>
public sealed class Relay : IAsyncDisposable
{
    public const string AdminKey = "test-admin-key-1234";
    private readonly RedisLease? _lease;
    private readonly List<TestHost> _dispatchers = [];

    private Relay(RedisLease? lease, string redisConnection, TestHost emulator, Dictionary<string, string?> config)
    {
        _lease = lease;
        RedisConnection = redisConnection;
        Emulator = emulator;
        Config = config;
        EmulatorApi = new EmulatorClient(emulator.Client);
    }

    public string RedisConnection { get; }

    public TestHost Emulator { get; }

    public EmulatorClient EmulatorApi { get; }

    public TestHost Ingress { get; private set; } = null!;

    public IReadOnlyList<TestHost> Dispatchers => _dispatchers;

    public TestHost Dispatcher => _dispatchers[0];

    public Dictionary<string, string?> Config { get; }

    public IConnectionMultiplexer Redis { get; private set; } = null!;

    public IDatabase Db => Redis.GetDatabase();

    /// <param name="configure">Changes to the shared configuration before the hosts start.</param>
    /// <param name="dispatchers">How many Dispatcher hosts; 0 starts none (start them with <see cref="AddDispatcherAsync"/>).</param>
    public static async Task<Relay> StartAsync(Action<Dictionary<string, string?>>? configure = null, int dispatchers = 1, string? redisConnection = null)
    {
        RedisLease? lease = null;
        if (redisConnection is null)
        {
            lease = await SharedRedis.LeaseAsync();
            redisConnection = lease.ConnectionString;
        }
        // Every request kept: the checks count them all, and the Redis restart test alone sends over 10,000.
        var emulator = await TestHost.StartEmulatorAsync(new Dictionary<string, string?> { ["Emulator:Secret"] = TestRuns.Secret, ["Emulator:MaxRecorded"] = "0" });
        var config = new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = redisConnection,
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Admin:ApiKey"] = AdminKey,
            ["AzureDevOps:BaseUrl"] = emulator.BaseAddress.ToString(),
            // Port's API is the emulator too; reporting only starts when a test sets Port:ClientId.
            ["Port:ApiBaseUrl"] = emulator.BaseAddress.ToString(),
            ["Dispatcher:PollIntervalSeconds"] = "0.2",
            // Load tests send thousands of runs from one address; RateLimitTests set their own limits.
            ["Ingress:RateLimit:PermitsPerSecondPerClient"] = "100000",
            ["Ingress:RateLimit:Burst"] = "100000",
            ["Ingress:RateLimit:GlobalPermitsPerSecond"] = "100000",
            ["Ingress:RateLimit:GlobalBurst"] = "100000",
            ["Ingress:RateLimit:ConcurrentCallsPerClient"] = "100000",
            ["Dispatcher:Retry:InitialDelaySeconds"] = "0.1",
            ["Dispatcher:Retry:MaxDelaySeconds"] = "1",
        };
        configure?.Invoke(config);
        var relay = new Relay(lease, redisConnection, emulator, config);
        relay.Redis = await ConnectionMultiplexer.ConnectAsync(redisConnection);
        for (var i = 0; i < dispatchers; i++)
        {
            await relay.AddDispatcherAsync();
        }
        var ingressConfig = new Dictionary<string, string?>(config);
        if (dispatchers > 0)
        {
            ingressConfig["services:dispatcher:http:0"] = relay.Dispatcher.BaseAddress.ToString().TrimEnd('/');
        }
        relay.Ingress = await TestHost.StartIngressAsync(ingressConfig);
        return relay;
    }

    public async Task<TestHost> AddDispatcherAsync(Action<Dictionary<string, string?>>? configure = null, Action<IServiceCollection>? services = null)
    {
        var config = new Dictionary<string, string?>(Config);
        configure?.Invoke(config);
        var host = await TestHost.StartDispatcherAsync(config, services);
        _dispatchers.Add(host);
        return host;
    }

    public async Task StopDispatcherAsync(TestHost dispatcher)
    {
        _dispatchers.Remove(dispatcher);
        await dispatcher.DisposeAsync();
    }

    public Task<HttpResponseMessage> SendRunAsync(byte[] body, string org = TestRuns.Org, string webhook = TestRuns.Webhook) =>
        TestRuns.SendAsync(Ingress.Client, body, org, webhook);

    /// <summary>Sends one run per id, <paramref name="batchSize"/> at a time, and asserts each was accepted.</summary>
    public async Task SendAllAcceptedAsync(IEnumerable<string> runIds, int batchSize = 50)
    {
        foreach (var batch in runIds.Chunk(batchSize))
        {
            var responses = await Task.WhenAll(batch.Select(r => SendRunAsync(TestRuns.Body(r))));
            foreach (var response in responses)
            {
                Assert.Equal(System.Net.HttpStatusCode.Accepted, response.StatusCode);
                response.Dispose();
            }
        }
    }

    public HttpRequestMessage Operator(HttpMethod method, string path)
    {
        var request = new HttpRequestMessage(method, path);
        request.Headers.TryAddWithoutValidation("X-Api-Key", AdminKey);
        return request;
    }

    public async ValueTask DisposeAsync()
    {
        // Ingress first (no new runs), then Dispatchers, then the emulator they post to.
        if (Ingress is not null)
        {
            await Ingress.DisposeAsync();
        }
        foreach (var dispatcher in _dispatchers)
        {
            await dispatcher.DisposeAsync();
        }
        await Emulator.DisposeAsync();
        Redis?.Dispose();
        if (_lease is not null)
        {
            await _lease.DisposeAsync();
        }
    }
}
