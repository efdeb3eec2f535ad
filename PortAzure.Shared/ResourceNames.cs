namespace PortAzure;

/// <summary>Aspire resource and connection names, shared by the AppHost and the services.</summary>
public static class ResourceNames
{
    public const string Redis = "redis";
    public const string Ingress = "ingress";
    public const string Dispatcher = "dispatcher";
    public const string AzureDevOpsEmulator = "azure-devops-emulator";

    // The AppHost's parameters: a deployment supplies their values under these names.
    public const string PortClientSecretParameter = "port-client-secret";
    public const string PortClientIdParameter = "port-client-id";
    public const string AdminApiKeyParameter = "admin-api-key";
    public const string DispatcherReplicasParameter = "dispatcher-replicas";
}
